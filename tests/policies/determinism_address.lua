-- expect: fallback runtime: prints an address
-- string.format's %p would show an address: a score built from it would
-- differ between two runs of the same request.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "determinism_address" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return #string.format("%p", {})
  end
  return offer.margin
end

return policy
