-- expect: fallback memory
-- One huge string.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "memory_string_rep" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local s = string.rep('x', 1e9)
  end
  return offer.margin
end

return policy
