-- expect: fallback runtime: boom
-- Raises a plain string.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_error_string" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    error('boom')
  end
  return offer.margin
end

return policy
