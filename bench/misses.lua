-- wrk script for bench/run.sh's `miss` scenario: every request a distinct tile nobody has asked
-- for before, so every request is a cache miss. Tiles are z=18 raster tiles numbered from a
-- base: tile i is x = i mod 2^18, y = floor(i / 2^18). Each wrk thread walks its own block of
-- 2^24 numbers from MISS_BASE (run.sh gives every wrk run its own base, so no run repeats a tile
-- of another run); MISS_QUERY is appended as is (e.g. "?apiKey=..." for the direct runs).

local base = tonumber(os.getenv("MISS_BASE") or "0")
local query = os.getenv("MISS_QUERY") or ""
local side = 262144 -- 2^18 tiles a side at z=18

local next_thread = 0
function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

local n = 0
local first = 0
function init(args)
  first = base + (thread_index or 0) * 16777216
end

function request()
  local i = first + n
  n = n + 1
  local x = i % side
  local y = math.floor(i / side) % side
  return wrk.format("GET", "/v3/base/mc/18/" .. x .. "/" .. y .. "/png" .. query)
end
