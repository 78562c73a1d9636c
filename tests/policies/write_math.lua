-- expect: fallback runtime: attempt to write field 'floor'
-- Tries: math.floor = nil
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "write_math" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    math.floor = nil
  end
  return offer.margin
end

return policy
