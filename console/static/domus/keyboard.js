// "Type this text" for the graphical console: which physical keys, with which modifiers, type
// each character on the guest's keyboard layout. The guest reads key positions (QEMU's extended
// key events carry scan codes), so the same text needs other keys on a German or French guest.
// Characters a layout has no key for are composed with its dead keys (á = ´ then a) where it can,
// else sent as a bare key symbol (the VNC server's own keymap then decides).
(function () {
  "use strict";
  // Each layout: rows of [code, plain, shift, altgr] characters ("" where none).
  const digits = ["Digit1", "Digit2", "Digit3", "Digit4", "Digit5", "Digit6", "Digit7", "Digit8", "Digit9", "Digit0"];
  const letters = "abcdefghijklmnopqrstuvwxyz".split("");
  function base() {
    const keys = {};
    letters.forEach((c) => { keys["Key" + c.toUpperCase()] = [c, c.toUpperCase(), ""]; });
    digits.forEach((code, i) => { keys[code] = [String((i + 1) % 10), "", ""]; });
    keys.Space = [" ", " ", ""];
    return keys;
  }
  function layout(changes) { return Object.assign(base(), changes); }
  function row(codes, plain, shift, altgr) {
    const out = {};
    codes.forEach((code, i) => { out[code] = [plain[i] || "", (shift || [])[i] || "", (altgr || [])[i] || ""]; });
    return out;
  }
  const LAYOUTS = {
    us: layout(Object.assign(
      row(digits, "1234567890".split(""), "!@#$%^&*()".split("")),
      row(["Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Backquote",
        "Comma", "Period", "Slash"], "-=[]\\;'`,./".split(""), "_+{}|:\"~<>?".split("")))),
    gb: layout(Object.assign(
      row(digits, "1234567890".split(""), "!\"£$%^&*()".split(""), ["", "", "", "€"]),
      row(["Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Backquote",
        "Comma", "Period", "Slash", "IntlBackslash"], "-=[]#;'`,./\\".split(""), "_+{}~:@¬<>?|".split("")))),
    de: layout(Object.assign(
      row(digits, "1234567890".split(""), "!\"§$%&/()=".split(""), ["", "²", "³", "", "", "", "{", "[", "]", "}"]),
      row(["KeyQ", "KeyE", "KeyY", "KeyZ", "KeyM"], ["q", "e", "z", "y", "m"], ["Q", "E", "Z", "Y", "M"], ["@", "€", "", "", "µ"]),
      row(["Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Backquote",
        "Comma", "Period", "Slash", "IntlBackslash"], "ß´ü+#öä^,.-<".split(""), "?`Ü*'ÖÄ°;:_>".split(""),
        ["\\", "", "", "~", "", "", "", "", "", "", "", "|"]))),
    fr: layout(Object.assign(
      row(digits, "&é\"'(-è_çà".split(""), "1234567890".split(""), ["", "~", "#", "{", "[", "|", "`", "\\", "^", "@"]),
      row(["KeyQ", "KeyA", "KeyW", "KeyZ", "KeyM", "KeyE"], ["a", "q", "z", "w", ",", "e"], ["A", "Q", "Z", "W", "?", "E"],
        ["", "", "", "", "", "€"]),
      row(["Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Backquote",
        "Comma", "Period", "Slash", "IntlBackslash"], ")=^$*mù²;:!<".split(""), "°+¨£µM%".split("").concat(["", ".", "/", "§", ">"]),
        ["]", "}", "", "¤", "", "", "", "", "", "", "", ""]))),
    pt: layout(Object.assign(
      row(digits, "1234567890".split(""), "!\"#$%&/()=".split(""), ["", "@", "£", "§", "", "", "{", "[", "]", "}"]),
      row(["KeyE"], ["e"], ["E"], ["€"]),
      row(["Minus", "Equal", "BracketLeft", "BracketRight", "Backslash", "Semicolon", "Quote", "Backquote",
        "Comma", "Period", "Slash", "IntlBackslash"], "'«+´~çº\\,.-<".split(""), "?»*`^Çª|;:_>".split(""),
        ["", "", "¨", "", "", "", "", "", "", "", "", ""]))),
  };
  // Dead keys: on these layouts the key types nothing until the next one (´ then e gives é).
  const DEAD = { de: "^´`~", fr: "^¨", pt: "´`~^¨" }; // as in XKB's basic variants
  const COMBINING = { "\u0301": "´", "\u0300": "`", "\u0302": "^", "\u0303": "~", "\u0308": "¨" };
  const SPECIAL = { "\n": [0xff0d, "Enter"], "\t": [0xff09, "Tab"] };

  function keysym(ch) {
    const cp = ch.codePointAt(0);
    return (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xff) ? cp : 0x01000000 + cp;
  }

  function positions(name) {
    const table = LAYOUTS[name];
    const found = {};
    for (const [code, chars] of Object.entries(table)) {
      const mods = ["", "shift", "altgr"];
      chars.forEach((ch, i) => { if (ch && !(ch in found)) found[ch] = { code, mod: mods[i] }; });
    }
    return found;
  }

  // The strokes that type `text` on a guest whose layout is `name`: [{keysym, code, mod}], a
  // dead key followed by Space where the character is the accent itself; `code` null where the
  // layout has no key for it.
  function strokes(text, name) {
    const where = positions(name);
    const dead = DEAD[name] || "";
    const out = [];
    let unplaced = 0;
    const press = (ch) => {
      const at = where[ch];
      out.push({ keysym: keysym(ch), code: at.code, mod: at.mod });
      return dead.includes(ch);
    };
    for (const ch of text.replace(/\r\n?/g, "\n")) {
      if (SPECIAL[ch]) { out.push({ keysym: SPECIAL[ch][0], code: SPECIAL[ch][1], mod: "" }); continue; }
      if (where[ch]) {
        if (press(ch)) out.push({ keysym: 0x20, code: "Space", mod: "" }); // the accent alone
        continue;
      }
      const [letter, accent] = ch.normalize("NFD");
      const deadKey = COMBINING[accent];
      if (letter && deadKey && where[letter] && where[deadKey] && dead.includes(deadKey)) {
        press(deadKey);
        press(letter);
        continue;
      }
      out.push({ keysym: keysym(ch), code: null, mod: "" });
      unplaced += 1;
    }
    return { strokes: out, unplaced };
  }

  window.domusKeyboard = { strokes, layouts: Object.keys(LAYOUTS) };
})();
