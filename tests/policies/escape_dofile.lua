-- expect: fallback runtime: attempt to call global 'dofile'
-- Reaches for dofile, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_dofile" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    dofile('/etc/passwd')
  end
  return offer.margin
end

return policy
