-- expect: fallback runtime: attempt to call global 'print'
-- Reaches for print, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_print" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    print('hello')
  end
  return offer.margin
end

return policy
