-- wrk script for bench/ingress.py: POST a message to one session after another.
-- Arguments after "--": a file with the bearer token, a file with one session id a line,
-- and optionally "close" to send "Connection: close" on every request.
-- done() prints one line "BENCH_RESULT {json}" that ingress.py parses.

local function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  return lines
end

local thread_count = 0

function setup(thread)
  -- Start each wrk thread at a different session so that threads do not post to the
  -- same session at the same moment.
  thread:set("first_index", thread_count * 37)
  thread_count = thread_count + 1
end

function init(args)
  token = read_lines(args[1])[1]
  sessions = read_lines(args[2])
  next_index = first_index or 0
  body = '{"content": "benchmark message"}'
  headers = {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
  }
  if args[3] == "close" then
    headers["Connection"] = "close"
  end
end

function request()
  next_index = next_index + 1
  local session = sessions[(next_index % #sessions) + 1]
  return wrk.format("POST", "/api/sessions/" .. session .. "/messages", headers, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "non_2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, errors.status, errors.connect, errors.read,
    errors.write, errors.timeout
  ))
end
