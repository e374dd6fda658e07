-- ARGV[1]: [[[key index, limit, window ms, cost], ...], ...]: checks, each
-- all-or-nothing over its limits, read in order up to the first that
-- refuses; ARGV[2], ARGV[3]: the share of a limit's
-- headroom leased with an accepted check (of a limit already used in its
-- window), and the most leased. Returns per
-- check: the position of the limit that refused it (0: accepted), that
-- limit's count, and the milliseconds left in its window; then, per limit,
-- the votes leased to the caller and the milliseconds its window has left
-- (0 for the limits after the one that refused).
local share, most = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, check in ipairs(cjson.decode(ARGV[1])) do
  local refused, refused_used, refused_ttl = 0, 0, 0
  local used, ttls = {}, {}
  for i, limit in ipairs(check) do
    local key = KEYS[limit[1]]
    local count = tonumber(redis.call('GET', key) or '0')
    local ttl = redis.call('PTTL', key)
    if ttl < 0 then count, ttl = 0, limit[3] end
    used[i], ttls[i] = count, ttl
    if count + limit[4] > limit[2] then
      refused, refused_used, refused_ttl = i, count, ttl
      break
    end
  end
  out[#out + 1] = refused
  out[#out + 1] = refused_used
  out[#out + 1] = refused_ttl
  for i, limit in ipairs(check) do
    local lease = 0
    if refused == 0 then
      if used[i] > 0 then
        lease = math.max(0, math.min(most, math.floor((limit[2] - used[i] - limit[4]) * share)))
      end
      if used[i] == 0 then
        redis.call('SET', KEYS[limit[1]], limit[4] + lease, 'PX', limit[3])
      else
        redis.call('INCRBY', KEYS[limit[1]], limit[4] + lease)
      end
    end
    out[#out + 1] = lease
    out[#out + 1] = ttls[i] or 0
  end
end
return out
