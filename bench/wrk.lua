-- wrk script for the bench (see bench/wrk.py). Settings come from the
-- environment:
--   BENCH_MODE   vote | voter | read | batch | page (GET BENCH_PREFIX, a path)
--   BENCH_VOTER, BENCH_AUTH  voter mode: the voterId and its bearer token
--   BENCH_CLIENTS voter mode: that many clients and voters instead of one
--   BENCH_STOP   a file: once it exists, every new request is a harmless
--                DELETE /vote (answered 405, never a vote), so that no vote
--                is still in flight when wrk stops and every vote sent is
--                accounted for; once all real requests are answered, each
--                thread creates BENCH_STOP.drained.<thread number>
--   BENCH_PREFIX post id prefix, BENCH_POSTS pool size, BENCH_BATCH votes
--                per POST /votes body
-- Requests are built once per thread and cycled; done() prints one line
-- "BENCH sent=.. harmless=.. s202=.. ..." that bench/wrk.py parses.

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

local requests_ = {}
local n = 0
local stopped = false
local stop_request
local stop_file

-- read back by done(); must be globals
sent = 0
harmless = 0
responses = 0
statuses = {}

function init(args)
  local mode = os.getenv("BENCH_MODE")
  local prefix = os.getenv("BENCH_PREFIX") or "p"
  local posts = tonumber(os.getenv("BENCH_POSTS") or "1000")
  local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
  stop_file = os.getenv("BENCH_STOP")
  local offset = (thread_id or 0) * 7919
  if mode == "vote" then
    for i = 0, posts - 1 do
      local post = prefix .. ((i + offset) % posts)
      local score = (i % 4 == 3) and "-1" or "1"
      requests_[#requests_ + 1] = wrk.format(
        "GET", "/vote?postId=" .. post .. "&score=" .. score)
    end
  elseif mode == "voter" then
    -- one voter (BENCH_AUTH: its bearer token), each post once: every
    -- vote counts as long as the pool outlasts the run
    -- BENCH_CLIENTS > 0: instead, that many clients (voter c<n> behind the
    -- address 10.x.y.z in X-Forwarded-For), each request the next one's
    local voter = os.getenv("BENCH_VOTER") or "bench"
    local clients = tonumber(os.getenv("BENCH_CLIENTS") or "0")
    local headers = {}
    local auth = os.getenv("BENCH_AUTH") or ""
    if auth ~= "" then headers["Authorization"] = "Bearer " .. auth end
    for i = 0, posts - 1 do
      local who = voter
      if clients > 0 then
        local c = (i + offset) % clients
        who = "c" .. c
        headers["X-Forwarded-For"] = string.format(
          "10.%d.%d.%d", math.floor(c / 65536) % 256, math.floor(c / 256) % 256, c % 256)
      end
      requests_[#requests_ + 1] = wrk.format(
        "GET", "/vote?postId=" .. prefix .. ((i + offset) % posts)
          .. "&score=1&voterId=" .. who, headers)
    end
  elseif mode == "read" then
    for i = 0, posts - 1 do
      requests_[#requests_ + 1] = wrk.format(
        "GET", "/vote-counts?postId=" .. prefix .. ((i + offset) % posts))
    end
  elseif mode == "batch" then
    local headers = {["Content-Type"] = "application/json"}
    local bodies = math.max(1, math.floor(posts / batch))
    for b = 0, bodies - 1 do
      local parts = {}
      for j = 0, batch - 1 do
        local k = b * batch + j
        local post = prefix .. ((k + offset) % posts)
        local score = (k % 4 == 3) and "-1" or "1"
        parts[#parts + 1] = '{"postId":"' .. post .. '","score":' .. score .. '}'
      end
      requests_[#requests_ + 1] = wrk.format(
        "POST", "/votes", headers, '{"votes":[' .. table.concat(parts, ",") .. ']}')
    end
  elseif mode == "page" then
    requests_[1] = wrk.format("GET", prefix)
  else
    error("BENCH_MODE must be vote, voter, read, batch or page")
  end
  stop_request = wrk.format("DELETE", "/vote")
end

-- wrk calls request() once on the first thread before the run, to see
-- whether the script pipelines; that call sends nothing
local verified = false

function request()
  if not verified and thread_id == 0 then
    verified = true
    return requests_[1]
  end
  if not stopped then
    local f = io.open(stop_file, "r")
    if f then
      f:close()
      stopped = true
    end
  end
  if stopped then
    harmless = harmless + 1
    return stop_request
  end
  sent = sent + 1
  n = n + 1
  if n > #requests_ then n = 1 end
  return requests_[n]
end

local drained = false

function response(status, headers, body)
  responses = responses + 1
  statuses[status] = (statuses[status] or 0) + 1
  -- after the window, tell the bench once every real request is answered
  if stopped and not drained and responses - (statuses[405] or 0) == sent then
    drained = true
    local f = io.open(stop_file .. ".drained." .. thread_id, "w")
    if f then f:close() end
  end
end

function done(summary, latency, requests)
  local total = {sent = 0, harmless = 0, responses = 0}
  local codes = {}
  for _, thread in ipairs(threads) do
    total.sent = total.sent + thread:get("sent")
    total.harmless = total.harmless + thread:get("harmless")
    total.responses = total.responses + thread:get("responses")
    for code, count in pairs(thread:get("statuses")) do
      codes[code] = (codes[code] or 0) + count
    end
  end
  local line = {"BENCH", "sent=" .. total.sent, "harmless=" .. total.harmless,
                "responses=" .. total.responses}
  for code, count in pairs(codes) do
    line[#line + 1] = "s" .. code .. "=" .. count
  end
  line[#line + 1] = string.format("p50us=%d", latency:percentile(50))
  line[#line + 1] = string.format("p99us=%d", latency:percentile(99))
  io.write(table.concat(line, " ") .. "\n")
end
