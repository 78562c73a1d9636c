-- expect: fallback timeout
-- Spins inside 64 nested pcalls: the timeout must unwind every level
-- (each one re-raises it) and still end the decision promptly.
-- Misbehaves unless session.mode is "normal"; then it scores offer.margin.
local policy = { name = "timeout_pcall_deep" }

function policy.score(offer, customer, session)
  if session.mode ~= "normal" then
    local function nest(n)
      if n == 0 then while true do end end
      while true do pcall(nest, n - 1) end
    end
    nest(63)
  end
  return offer.margin
end

return policy
