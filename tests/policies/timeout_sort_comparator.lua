-- expect: fallback timeout
-- A comparator that never returns (table.sort is pure Lua here, so hooks fire).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_sort_comparator" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local t = { 3, 1, 2 }
    table.sort(t, function(a, b) while true do end end)
  end
  return offer.margin
end

return policy
