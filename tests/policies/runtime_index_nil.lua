-- expect: fallback runtime: attempt to index
-- Reads through a missing field.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_index_nil" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return customer.attrs.nope.deeper
  end
  return offer.margin
end

return policy
