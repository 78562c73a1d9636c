-- expect: fallback runtime: bad argument #1 to 'exp' (number expected, got table)
-- nbx's math functions check their arguments as the C library's did.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "math_bad_argument" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return math.exp(offer)
  end
  return offer.margin
end

return policy
