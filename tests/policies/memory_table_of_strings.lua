-- expect: fallback limit
-- Fills a table with distinct 1-2 MB strings (equal strings would be shared)
-- until the memory or the time limit ends it: which comes first depends on
-- the machine, both are fine.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_table_of_strings" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local t = {}
    for i = 1, 1e6 do t[i] = string.rep(tostring(i), 1e6) end
  end
  return offer.margin
end

return policy
