-- expect: fallback timeout
-- Catches its own errors and retries forever.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_error_loop" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local n = 0
    repeat
      local ok = pcall(error, "again")
      n = n + 1
    until false
  end
  return offer.margin
end

return policy
