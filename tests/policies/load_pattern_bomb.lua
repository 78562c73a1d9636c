-- expect: load_error: load time limit
-- A pathological pattern at load.
local r = string.find(('a'):rep(4000), '.-.-.-.-.-b$')

return { name = "load_pattern_bomb", score = function(offer) return offer.margin end }
