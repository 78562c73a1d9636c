-- expect: fallback runtime: blamed on the caller
-- error(msg, 2) points at the calling line.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_error_level2" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function check(x) error('blamed on the caller', 2) end
    check(offer)
  end
  return offer.margin
end

return policy
