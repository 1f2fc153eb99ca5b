// PortraitTalk front-end extension: gives the pack's nodes and its PTALK_LANDMARKS links a shared colour
// so a talking-face graph is easy to follow among other SD nodes, and tells the frontend's missing-models panel
// which ComfyUI/models folder the pack's loaders read.
import { app } from "../../scripts/app.js";

const NODE_COLOR = "#224a4a";
const NODE_BGCOLOR = "#2f5f5f";
const LINK_COLOR = "#7fd3c8";

// ComfyUI/models folder of the pack's loaders for the frontend's missing-models panel: frontend 1.49 reads
// node.properties.models = [{name, directory}] and matches name to the widget value (core loaders it knows by
// itself). Defined at run time and not enumerable, so it is never saved: a saved entry needs a download URL in
// both frontends' workflow schema (1.32 validates by default and shows an alert), and these weights are
// published nowhere. A file's own saved entries, if any, win.
const MODEL_FOLDERS = {
  PTalkAnimateNetLoader: () => "portraittalk",
  PTalkIdentityNetLoader: (v) => String(v).split("/")[0], // options are "portraittalk/<file>" / "ipadapter/<file>"
};

function describeModelFolder(node, nodeName) {
  const folder = MODEL_FOLDERS[nodeName];
  if (!folder || !node.properties) return;
  let loaded; // entries a loaded file brings: kept for the session, not saved again
  Object.defineProperty(node.properties, "models", {
    enumerable: false,
    configurable: true,
    get() {
      if (loaded) return loaded;
      const w = node.widgets?.find((w) => w.name === "weights");
      return typeof w?.value === "string" ? [{ name: w.value, directory: folder(w.value) }] : undefined;
    },
    set(v) { loaded = v; }, // LiteGraph's configure() assigns saved properties one by one
  });
}

app.registerExtension({
  name: "PortraitTalk.appearance",
  async setup() {
    if (app.canvas?.default_connection_color_byType) {
      app.canvas.default_connection_color_byType["PTALK_LANDMARKS"] = LINK_COLOR;
    }
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith("PTalk")) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      this.color = NODE_COLOR;
      this.bgcolor = NODE_BGCOLOR;
      describeModelFolder(this, nodeData.name);
      return r;
    };
  },
});
