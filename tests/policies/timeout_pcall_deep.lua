-- expect: fallback timeout
-- Spins inside 64 nested pcalls: the timeout must unwind every level
-- (each one re-raises it) and still end the decision promptly.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "timeout_pcall_deep" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function nest(n)
      if n == 0 then while true do end end
      while true do pcall(nest, n - 1) end
    end
    nest(63)
  end
  return offer.margin
end

return policy
