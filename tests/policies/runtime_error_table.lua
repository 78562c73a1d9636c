-- expect: fallback runtime: error object is a table
-- Raises a table: the record must still explain it.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_error_table" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    error({ code = 42 })
  end
  return offer.margin
end

return policy
