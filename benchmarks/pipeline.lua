-- benchmarks/pipeline.lua: wrk sends 16 `GET /v1/user` per write, the TechEmpower plaintext convention;
-- wrk counts every response it parses as one request.
local depth = 16

init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format("GET", "/v1/user")
  end
  batch = table.concat(r)
end

request = function()
  return batch
end
