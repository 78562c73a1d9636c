-- expect: fallback runtime: attempt to call global 'loadfile'
-- Reaches for loadfile, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_loadfile" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    loadfile('/etc/passwd')
  end
  return offer.margin
end

return policy
