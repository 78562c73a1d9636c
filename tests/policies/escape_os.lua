-- expect: fallback runtime: attempt to index global 'os'
-- Reaches for os, which is not there.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "escape_os" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    os.execute('true')
  end
  return offer.margin
end

return policy
