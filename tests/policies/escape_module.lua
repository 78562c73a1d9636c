-- expect: fallback runtime: attempt to call global 'module'
-- Reaches for module, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_module" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    module('x')
  end
  return offer.margin
end

return policy
