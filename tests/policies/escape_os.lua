-- expect: fallback runtime: attempt to index global 'os'
-- Reaches for os, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_os" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    os.execute('true')
  end
  return offer.margin
end

return policy
