-- expect: fallback timeout
-- Catches its own errors and retries forever.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_error_loop" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local n = 0
    repeat
      local ok = pcall(error, "again")
      n = n + 1
    until false
  end
  return offer.margin
end

return policy
