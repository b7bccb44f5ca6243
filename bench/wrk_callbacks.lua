-- wrk script for bench/load.py: every request is a different, pre-encrypted WeCom callback.
-- Each wrk thread sends its own slice of the file, so no message is sent twice.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  local lines = {}
  for line in io.lines(file) do
    lines[#lines + 1] = line
  end
  -- Slices cover every line: thread t sends lines floor(t*n/T)+1 .. floor((t+1)*n/T).
  first = math.floor(tid * #lines / nthreads) + 1
  last = math.floor((tid + 1) * #lines / nthreads)
  index = first
  reqs = lines
  ok, bad, exhausted = 0, 0, 0
end

function request()
  if index > last then
    exhausted = exhausted + 1
    index = first  -- out of distinct messages: repeats are WeCom-style retries (deduplicated)
  end
  local path, body = reqs[index]:match("^([^\t]+)\t(.*)$")
  index = index + 1
  return wrk.format("POST", path, {["Content-Type"] = "text/xml"}, body)
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 else bad = bad + 1 end
end

function done(summary, latency, requests)
  local ok_total, bad_total, wrapped = 0, 0, 0
  for _, thread in ipairs(threads) do
    ok_total = ok_total + thread:get("ok")
    bad_total = bad_total + thread:get("bad")
    wrapped = wrapped + thread:get("exhausted")
  end
  io.write(string.format(
    'RESULT {"requests": %d, "ok": %d, "non200": %d, "wrapped": %d, "errors": %d, "duration_us": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, ok_total, bad_total, wrapped,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(50), latency:percentile(99), latency.max))
end
