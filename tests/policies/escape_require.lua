-- expect: fallback runtime: attempt to call global 'require'
-- Reaches for require, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_require" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    require('ffi')
  end
  return offer.margin
end

return policy
