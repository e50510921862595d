package scope

// yaml.v3 builds the whole node tree of a document before anything can
// look at it, at about 200 bytes a node, and a node can take a single byte
// of YAML ("{a,a,a,...}"): a file must be refused before it is decoded, not
// after. documentBounds reads the bytes once, without parsing them, and
// gives visit, for each document, an upper bound on the nodes yaml.v3 makes of it.
//
// The bound charges each node to a byte that any YAML that makes the node
// must hold: a scalar, alias or collection to the byte that starts it, an
// empty scalar or an implicit mapping or sequence to the indicator ("-",
// ":", "?", ",", "}") that calls for it, a document to its "---" or to the
// start of the file. It does not know quotes, comments or block scalars and
// counts in them as if they were structure, which can only make it larger.

// docBound is the bound of one document of a file.
type docBound struct {
	line   int  // where the document starts, from 1
	nodes  int  // at least the nodes yaml.v3 makes of it
	anchor bool // it may define an anchor
}

// documentBounds splits data where yaml.v3 must start a new document (or
// fail): a line starting with "---" or "..." and a blank, the only places
// where a scalar or collection cannot go on. A marker it misses, after a
// Unicode line break or in UTF-16, only merges two documents into one,
// whose bound covers both. It stops when visit returns false.
func documentBounds(data []byte, visit func(docBound) bool) {
	cur := docBound{line: 1, nodes: 2}
	line := 1
	afterName := false // the byte before ends an anchor or alias name
	for i := 0; i < len(data); i++ {
		c := data[i]
		if c == '\n' || c == '\r' {
			if c == '\n' || i+1 == len(data) || data[i+1] != '\n' {
				line++
			}
			if isMarker(data, i+1) {
				if !visit(cur) {
					return
				}
				cur = docBound{line: line, nodes: 2}
			}
			continue
		}
		if isBlank(c) {
			continue
		}
		// After a byte of a plain scalar or a name, only the indicators
		// below can start a node: anything else goes on with the scalar.
		inWord := i > 0 && isWord(data[i-1]) && !afterName
		afterName = false
		switch c {
		case '[', '{', ',', '}':
			// A collection, or the empty value of a key given alone: "{a, b}".
			cur.nodes++
		case ']':
		case '?':
			// A mapping, its empty key and its empty value.
			cur.nodes += 3
		case ':':
			// Inside a plain scalar ("2001:db8::1", "{a:b}") unless a blank
			// follows or no scalar came right before.
			if inWord && !blankAt(data, i+1) {
				continue
			}
			cur.nodes++ // the mapping it may start
			if i == 0 || !inWord && !closesNode(data[i-1]) {
				cur.nodes++ // an empty key: ": b"
			}
			if emptyAfter(data, i+1) {
				cur.nodes++ // an empty value: "a:"
			}
		case '-':
			switch {
			case inWord:
			case blankAt(data, i+1):
				cur.nodes++ // the sequence it may start
				if emptyAfter(data, i+1) {
					cur.nodes++ // an empty item
				}
			default:
				cur.nodes++ // a scalar such as -1
			}
		case '*', '&':
			if inWord {
				continue
			}
			cur.nodes++ // the alias, or the node an anchor may leave empty
			if c == '&' {
				cur.anchor = true
			}
			for i+1 < len(data) && isNameByte(data[i+1]) {
				i++
			}
			// yaml.v3 reads "*a:b" in a flow as a key and a value.
			afterName = true
		default:
			if !inWord {
				cur.nodes++
			}
		}
	}
	visit(cur)
}

// isMarker says a document marker starts at i: "---" or "..." and a blank.
func isMarker(data []byte, i int) bool {
	if i+3 > len(data) {
		return false
	}
	m := data[i : i+3]
	if string(m) != "---" && string(m) != "..." {
		return false
	}
	return blankAt(data, i+3)
}

func isBlank(c byte) bool { return c == ' ' || c == '\t' }

// blankAt says yaml.v3 may see a blank, a line break or the end at i.
// Bytes of other encodings and other line breaks count as blanks: that
// only charges more.
func blankAt(data []byte, i int) bool {
	if i >= len(data) {
		return true
	}
	c := data[i]
	return isBlank(c) || c == '\n' || c == '\r' || c == 0 || c >= 0x80
}

// isWord says c can only be the inside or the end of a token after which
// yaml.v3 needs a blank or an indicator to start another: a plain scalar,
// an anchor or tag name, a directive, a block scalar header.
func isWord(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '/' || c == '-' || c == '_'
}

// isNameByte is what yaml.v3 takes in an anchor or alias name.
func isNameByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// closesNode says c may end the key a ':' right after it belongs to.
func closesNode(c byte) bool {
	return c == '"' || c == '\'' || c == ']' || c == '}'
}

// emptyAfter says the node after an indicator may be empty: nothing that
// starts one follows on its line.
func emptyAfter(data []byte, i int) bool {
	for i < len(data) && isBlank(data[i]) {
		i++
	}
	if i == len(data) {
		return true
	}
	switch c := data[i]; {
	case isWord(c):
		return false
	case c == '"', c == '\'', c == '[', c == '{', c == '*', c == '|', c == '>':
		return false
	case c == '&', c == '!':
		// An anchor or a tag may stand alone; the anchor's charge or the
		// tag's as the start of a token covers the empty node.
		return false
	}
	return true
}
