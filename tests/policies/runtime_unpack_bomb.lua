-- expect: fallback runtime: too many results to unpack
-- unpack over a huge range must fail cleanly, not exhaust the C stack.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_unpack_bomb" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return unpack({}, 1, 1e8)
  end
  return offer.margin
end

return policy
