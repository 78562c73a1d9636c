-- expect: fallback runtime: error object is a nil
-- Raises nil.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_error_nil" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    error()
  end
  return offer.margin
end

return policy
