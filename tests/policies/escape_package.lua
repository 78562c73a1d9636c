-- expect: fallback runtime: attempt to index global 'package'
-- Reaches for package, which is not there.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "escape_package" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    package.loaded.os.exit()
  end
  return offer.margin
end

return policy
