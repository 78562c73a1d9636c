-- expect: fallback runtime: attempt to index global 'io'
-- Reaches for io, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_io" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    io.open('/etc/passwd')
  end
  return offer.margin
end

return policy
