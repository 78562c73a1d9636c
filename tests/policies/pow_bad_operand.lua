-- expect: fallback runtime: attempt to perform arithmetic on a table value
-- `^` (a call to nbx's pow once instrumented) fails on a table as the
-- operator did. Misbehaves when session.mode is "hostile"; otherwise it
-- scores offer.margin.
local policy = { name = "pow_bad_operand" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return offer.margin ^ customer
  end
  return offer.margin
end

return policy
