-- wrk script for bench/expiry.sh: the requests of tiles.lua (path in $TILES_LUA), plus the tail
-- percentiles a short stall at each expiry shows in (wrk --latency stops at 99%). Latencies
-- are in microseconds here; printed in ms as "tail <percentile>% <ms>ms".
dofile(os.getenv("TILES_LUA"))

function done(summary, latency, requests)
  for _, p in ipairs({ 99.9, 99.99 }) do
    io.write(string.format("tail %g%% %.3fms\n", p, latency:percentile(p) / 1000))
  end
end
