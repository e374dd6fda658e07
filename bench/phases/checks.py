"""The end of a run: Redis's own record of stalls, and the correctness
line (every vote answered 202 counted once, nothing dead-lettered)."""
from bench.context import fmt
from services import contracts


def redis_stalls(bench):
    """Redis's own record of stalls of 10 ms or more (LATENCY LATEST)."""
    if bench.env.redis_server is None:
        return
    store = bench.env.redis()
    try:
        events = store.execute_command("LATENCY", "LATEST")
        stats = store.info("persistence")
        slow = store.slowlog_get(128)
    finally:
        store.close()
    parts = ["{} max {} ms".format(event[0], event[3]) for event in events]
    commands = {}
    for entry in slow:
        command = entry["command"]
        if isinstance(command, bytes):
            command = command.decode(errors="replace")
        words = command.split(" ", 3)
        name = words[0].upper()
        if name in ("EVALSHA", "EVAL") and len(words) > 2 and words[2].isdigit():
            # the apply script: 2 keys + 2 per vote
            name = "{} of {} votes".format(name, (int(words[2]) - 2) // 2)
        count, worst = commands.get(name, (0, 0))
        commands[name] = (count + 1, max(worst, entry["duration"] / 1000))
    bench.notes.append(
        "Redis stalls >= 10 ms (LATENCY LATEST): {}; slow commands: {}; "
        "{} AOF rewrites in all".format(
            ", ".join(parts) if parts else "none",
            ", ".join("{} x{} (max {:.0f} ms)".format(name, count, worst)
                      for name, (count, worst) in commands.items()) or "none",
            stats.get("aof_rewrites", "?")))


def correctness(bench):
    """The votes: every 202 counted once, nothing more."""
    store = bench.env.redis()
    total = posts = 0
    cursor = 0
    try:
        while True:
            cursor, keys = store.scan(cursor, match=contracts.POST_KEY_PATTERN, count=1000)
            if keys:
                pipe = store.pipeline(transaction=False)
                for key in keys:
                    pipe.hmget(key, "upvote", "downvote")
                for up, down in pipe.execute():
                    total += int(up or 0) + int(down or 0)
                posts += len(keys)
            if not cursor:
                break
    finally:
        store.close()
    expected = sum(bench.accepted.values())
    dead, _ = bench.env.queue_depth(contracts.DEAD_LETTER_QUEUE)
    bench.figures["counted"], bench.figures["accepted"] = total, expected
    if total != expected:
        bench.problems.append("Redis counts {} votes, {} were answered 202".format(
            total, expected))
    if dead:
        bench.problems.append("{} messages in the dead-letter queue".format(dead))
    ok = not bench.problems
    if bench.max_other > 0.15:
        bench.notes.insert(0, "other processes on this machine used up to {:.0f}% "
                           "of a core during a measurement (OTHER in the cpu "
                           "lines): the figures are noisy".format(bench.max_other * 100))
    bench.row("correctness: votes counted == 202s",
              "PASS" if ok else "FAIL",
              "{} == {}".format(fmt(total), fmt(expected)) if total == expected
              else "{} != {}".format(fmt(total), fmt(expected)),
              "each phase settled exactly; then SCAN votes:{b*}:post:*",
              "{} counted in {} posts, {} answered 202 over {} phases; "
              "{} dead-lettered{}".format(
                 fmt(total), fmt(posts), fmt(expected), len(bench.accepted),
                 dead or 0, "" if ok else "; " + "; ".join(bench.problems)))
    return ok
