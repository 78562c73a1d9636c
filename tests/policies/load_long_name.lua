-- expect: load_error: must be 1 to 127 bytes
-- The name is 200 bytes long.
return { name = string.rep("n", 200), score = function(offer) return offer.margin end }
