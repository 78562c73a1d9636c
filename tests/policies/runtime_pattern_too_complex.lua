-- expect: fallback runtime: pattern too complex
-- A pattern nesting too deep for the matcher's bounded recursion.
-- Misbehaves when session.mode is "hostile"; otherwise it scores offer.margin.
local policy = { name = "runtime_pattern_too_complex" }

function policy.score(offer, customer, session)
  if session.mode == "hostile" then
    return string.match(('a'):rep(400), ('a?'):rep(400) .. 'b')
  end
  return offer.margin
end

return policy
