-- expect: fallback runtime: attempt to call global 'loadfile'
-- Reaches for loadfile, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_loadfile" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    loadfile('/etc/passwd')
  end
  return offer.margin
end

return policy
