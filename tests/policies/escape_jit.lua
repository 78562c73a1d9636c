-- expect: fallback runtime: attempt to index global 'jit'
-- Reaches for jit, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_jit" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    jit.on()
  end
  return offer.margin
end

return policy
