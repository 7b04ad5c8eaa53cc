// The page around the Gradient Flow tab: its stylesheet, TensorBoard's dark mode
// (or the OS's), and saving a canvas as a file. The window and document come in
// as arguments; importing this module touches neither.

/**
 * Adds `<link rel="stylesheet" href="...">` to the head (relative URLs resolve
 * against the plugin's `<base href>`; CSP forbids nothing here).
 * @param {Document} doc
 * @param {string} href
 * @returns {HTMLLinkElement}
 */
export function loadStylesheet(doc, href) {
  const link = doc.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  doc.head.appendChild(link);
  return link;
}

/**
 * Whether TensorBoard (the parent page) is in dark mode; outside TensorBoard,
 * or if the parent cannot be read, the OS preference.
 * @param {Window} win
 * @returns {boolean}
 */
export function isDark(win) {
  try {
    if (win.parent && win.parent !== win && win.parent.document && win.parent.document.body) {
      return win.parent.document.body.classList.contains("dark-mode");
    }
  } catch {
    // cross-origin parent: fall through
  }
  return Boolean(win.matchMedia && win.matchMedia("(prefers-color-scheme: dark)").matches);
}

/**
 * Calls `onChange(dark)` whenever TensorBoard's dark mode (a class on the
 * parent's body) or the OS preference changes, and once now.
 * @param {Window} win
 * @param {(dark: boolean) => void} onChange
 */
export function watchColorScheme(win, onChange) {
  let last = null;
  const check = () => {
    const dark = isDark(win);
    if (dark !== last) {
      last = dark;
      onChange(dark);
    }
  };
  try {
    if (win.parent && win.parent !== win && win.parent.document && win.parent.document.body) {
      new win.MutationObserver(check).observe(win.parent.document.body, {
        attributes: true,
        attributeFilter: ["class"],
      });
    }
  } catch {
    // cross-origin parent: only the media query
  }
  if (win.matchMedia) {
    const mq = win.matchMedia("(prefers-color-scheme: dark)");
    if (mq.addEventListener) mq.addEventListener("change", check);
  }
  check();
}

/**
 * Saves a canvas as a PNG through a temporary download link.
 * @param {HTMLCanvasElement} canvas
 * @param {string} filename
 * @returns {Promise<void>}
 */
export function downloadCanvas(canvas, filename) {
  const doc = canvas.ownerDocument;
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => {
      if (!blob) {
        reject(new Error("the canvas could not be encoded as PNG"));
        return;
      }
      const url = URL.createObjectURL(blob);
      const a = doc.createElement("a");
      a.href = url;
      a.download = filename;
      a.hidden = true;
      doc.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      resolve();
    }, "image/png");
  });
}

/**
 * A file name made of safe characters only.
 * @param {string[]} parts
 * @returns {string}
 */
export function safeFileName(parts) {
  return parts
    .map((p) => String(p).replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^_+|_+$/g, ""))
    .filter(Boolean)
    .join("-");
}
