-- expect: load_error: assignment to 'prev', a local of an enclosing function
-- Keeps the previous customer's secret in an upvalue and raises it in the
-- next customer's decision: refused when the policy loads, naming the line
-- (the secret used to reach bob's decision, in the CLI, batches and nginx).
local prev

local policy = { name = "leak_upvalue" }

function policy.score(offer, customer, session)
  if prev then error("previous customer was " .. prev) end
  prev = customer.id .. "|" .. tostring(customer.attrs.secret)
  return offer.margin
end

return policy
