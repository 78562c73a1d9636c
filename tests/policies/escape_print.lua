-- expect: fallback runtime: attempt to call global 'print'
-- Reaches for print, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_print" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    print('hello')
  end
  return offer.margin
end

return policy
