-- expect: fallback runtime: attempt to call global 'dofile'
-- Reaches for dofile, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_dofile" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    dofile('/etc/passwd')
  end
  return offer.margin
end

return policy
