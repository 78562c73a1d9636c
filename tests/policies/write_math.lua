-- expect: fallback runtime: attempt to write field 'floor'
-- Tries: math.floor = nil
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_math" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    math.floor = nil
  end
  return offer.margin
end

return policy
