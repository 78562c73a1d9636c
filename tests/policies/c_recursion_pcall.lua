-- expect: ok
-- Unbounded recursion through pcall. The sandbox's pcall is capped at 64
-- nested levels ("pcall nested more than 64 deep"): the innermost level
-- fails, the level above catches it, and the policy goes on to score
-- normally. Without the cap each level would be a C frame, and unwinding a
-- timeout through thousands of them takes far longer than the time limit.
local policy = { name = "c_recursion_pcall" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    local function f() return pcall(f) end
    -- every level returns true and what the level below returned; the
    -- innermost returns false and the message
    local r = { f() }
    if #r ~= 65 or r[64] ~= false or not r[65]:find("nested more than 64") then
      error("expected 64 levels, then the cap")
    end
  end
  return offer.margin
end

return policy
