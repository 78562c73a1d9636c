-- expect: fallback memory
-- One huge string.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "memory_string_rep" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local s = string.rep('x', 1e9)
  end
  return offer.margin
end

return policy
