-- expect: fallback runtime: built when the policy loaded
-- Writes into a table nested in the policy's params: every table the top
-- level built is frozen, however deep.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "write_frozen_nested", params = { weights = { a = { 1 } } } }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    table.insert(policy.params.weights.a, 2)
  end
  return offer.margin
end

return policy
