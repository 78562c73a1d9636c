-- expect: fallback limit
-- Grows one table without bound: the time limit usually ends it before the
-- memory limit does (32 MiB of table takes longer than 2 ms to fill).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_table_growth" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local t = {}
    for i = 1, 1e9 do t[i] = { i } end
  end
  return offer.margin
end

return policy
