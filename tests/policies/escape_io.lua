-- expect: fallback runtime: attempt to index global 'io'
-- Reaches for io, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_io" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    io.open('/etc/passwd')
  end
  return offer.margin
end

return policy
