-- expect: fallback limit
-- string.rep with a separator, and table.concat of a huge table, until the
-- memory or the time limit ends it (which comes first depends on the
-- machine: both are fine).
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_rep_separator" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local parts = {}
    for i = 1, 64 do parts[i] = string.rep(tostring(i), 4e5, ',') end
    local s = table.concat(parts, ';')
    local t = {}
    for i = 1, 64 do t[i] = s .. i end
  end
  return offer.margin
end

return policy
