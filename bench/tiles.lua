-- wrk script for bench/run.sh: request the tiles listed in $TILES_FILE (one path a line),
-- round robin, each thread starting at its own offset so threads do not walk in lock-step.
-- No response() callback: defining one makes wrk parse every response in Lua and slows it.

local file = os.getenv("TILES_FILE") or "tiles.txt"
local paths = {}
for line in io.lines(file) do
  if #line > 0 then
    paths[#paths + 1] = line
  end
end
if #paths == 0 then
  error("no tile paths in " .. file)
end

local counter = 0
local next_thread = 0

-- Runs in the main Lua state, once per thread: gives each thread state a global thread_index.
function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  counter = ((thread_index or 0) * 7919) % #paths
end

function request()
  counter = counter + 1
  if counter > #paths then
    counter = 1
  end
  return wrk.format("GET", paths[counter])
end
