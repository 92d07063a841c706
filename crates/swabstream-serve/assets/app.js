// The dashboard: follows /v1/stream (the day's summary whenever it changes)
// and draws it with the vendored ECharts. Nothing here comes from anywhere
// but the service. Labels in Chinese and English, the choice remembered.
"use strict";

const DISTRICTS = {
  "310101": ["黄浦区", "Huangpu"], "310104": ["徐汇区", "Xuhui"], "310105": ["长宁区", "Changning"],
  "310106": ["静安区", "Jing'an"], "310107": ["普陀区", "Putuo"], "310109": ["虹口区", "Hongkou"],
  "310110": ["杨浦区", "Yangpu"], "310112": ["闵行区", "Minhang"], "310113": ["宝山区", "Baoshan"],
  "310114": ["嘉定区", "Jiading"], "310115": ["浦东新区", "Pudong"], "310116": ["金山区", "Jinshan"],
  "310117": ["松江区", "Songjiang"], "310118": ["青浦区", "Qingpu"], "310120": ["奉贤区", "Fengxian"],
  "310151": ["崇明区", "Chongming"],
};

const TEXT = {
  zh: {
    title: "核酸采样实时看板", day: "日期", latest: "最新", mapBy: "地图", peopleSampled: "采样人数",
    percentUsingCode: "用码比例", usingCode: "用码人数", validScans: "有效扫码", rescans: "重复采样",
    rejected: "拒收", duplicates: "重复事件", map: "各区地图", districts: "各区采样人数",
    districtTable: "各区明细", district: "区", hours: "分时采样（各采样点合计）", methods: "识别方式",
    rejections: "拒收原因", channels: "发码渠道", channel: "渠道", codesOnDay: "当日发码", codesToDate: "截至当日累计发码", sites: "最繁忙的 20 个采样点", site: "采样点",
    signIn: "分析员令牌", signInHelp: "请输入分析员令牌（由 swabstream credential 生成）。", go: "进入",
    asOf: "数据截至", lag: "未处理记录", stale: "数据已过期：视图库无法读取", partitions: "分区",
    connecting: "连接中…", badToken: "令牌无效", reconnecting: "连接中断，正在重连…",
    lang: "English", people: "人",
    CODE_PERSONAL: "个人码", CODE_PAPER: "离线纸码", CODE_DYNAMIC: "动态码", CODE_RELATIVE: "亲属码",
    ID_DOCUMENT: "证件", DECLARED_ID: "手工录入证件号",
    APP: "随申办 App", WECHAT: "微信", ALIPAY: "支付宝", OFFLINE: "线下",
  },
  en: {
    title: "Nucleic-acid sampling, live", day: "Day", latest: "latest", mapBy: "Map", peopleSampled: "People sampled",
    percentUsingCode: "Using code", usingCode: "Using code (people)", validScans: "Valid scans", rescans: "Rescans",
    rejected: "Rejected", duplicates: "Duplicates", map: "Districts map", districts: "People sampled by district",
    districtTable: "Districts", district: "District", hours: "By hour (sites summed)", methods: "Identification method",
    rejections: "Rejections by reason", channels: "Codes issued by channel", channel: "Channel", codesOnDay: "Issued on the day", codesToDate: "Issued to date", sites: "The 20 busiest sites", site: "Site",
    signIn: "Analyst token", signInHelp: "Enter your analyst token (made by swabstream credential).", go: "Open",
    asOf: "As of", lag: "records not yet counted", stale: "STALE: the view store cannot be read", partitions: "partitions",
    connecting: "connecting…", badToken: "invalid token", reconnecting: "connection lost, reconnecting…",
    lang: "中文", people: "people",
    CODE_PERSONAL: "Personal code", CODE_PAPER: "Paper code", CODE_DYNAMIC: "Dynamic code", CODE_RELATIVE: "Relative code",
    ID_DOCUMENT: "ID document", DECLARED_ID: "Declared ID",
    APP: "App", WECHAT: "WeChat", ALIPAY: "Alipay", OFFLINE: "Offline",
  },
};

let lang = localStorage.getItem("swabstream.lang") || "zh";
let token = null;
let summary = null;
let source = null;
let chosenDay = "";
const charts = {};
// No animation under WebDriver, so that a test's screenshot shows the final charts.
const ANIMATE = !navigator.webdriver;

const $ = (id) => document.getElementById(id);
const t = (k) => (TEXT[lang][k] !== undefined ? TEXT[lang][k] : k);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString(lang === "zh" ? "zh-CN" : "en-US"));
const pct = (p) => (p === null || p === undefined ? "–" : p.toFixed(1) + " %");
const districtName = (code) => {
  const d = DISTRICTS[code];
  if (!d) return code;
  return lang === "zh" ? d[0] + " " + d[1] : d[1] + " " + d[0];
};
// 2,040,000 reads "2.04 M" in English and "204 万" in Chinese.
const short = (n) => {
  if (lang === "zh") return n >= 1e4 ? (n / 1e4).toFixed(n >= 1e6 ? 0 : 1) + " 万" : fmt(n);
  return n >= 1e6 ? (n / 1e6).toFixed(2) + " M" : n >= 1e4 ? (n / 1e3).toFixed(1) + " k" : fmt(n);
};

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("lang").textContent = t("lang");
  document.title = t("title") + " — swabstream";
  if (summary) render(summary);
}

function chart(id) {
  if (!charts[id]) charts[id] = echarts.init($(id));
  return charts[id];
}

function setFigure(id, value, text) {
  const el = $(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text;
}

function render(s) {
  summary = s;
  const c = s.city;
  setFigure("people-sampled", c.people_sampled, short(c.people_sampled));
  $("people-sampled-exact").textContent = fmt(c.people_sampled) + " " + t("people");
  setFigure("percent-using-code", c.percent_using_code, pct(c.percent_using_code));
  setFigure("using-code", c.using_code, fmt(c.using_code) + " " + t("people"));
  setFigure("valid-scans", c.valid_scans, fmt(c.valid_scans));
  setFigure("rescans", c.rescans, fmt(c.rescans));
  setFigure("rejected", c.rejected, fmt(c.rejected));
  setFigure("duplicates", c.duplicates, fmt(c.duplicates));
  renderDays(s);
  renderFreshness(s.as_of);
  renderDistricts(s.districts);
  renderMap(s.districts);
  renderHours(s.hours);
  bars("method-chart", s.methods.map((m) => [t(m.method), m.people_sampled]));
  bars("rejection-chart", s.rejections.map((r) => [r.reason, r.count]));
  renderChannels(s.codes_by_channel);
  renderSites(s.busiest_sites);
  document.body.dataset.day = s.day || "";
  document.body.dataset.generation = String((Number(document.body.dataset.generation) || 0) + 1);
}

function renderDays(s) {
  const sel = $("day");
  const want = [""].concat(s.days.slice().reverse());
  const have = Array.from(sel.options).map((o) => o.value);
  if (JSON.stringify(want) !== JSON.stringify(have) || sel.options[0].textContent.indexOf(t("latest")) < 0) {
    sel.innerHTML = "";
    want.forEach((d) => {
      const o = document.createElement("option");
      o.value = d;
      o.textContent = d === "" ? t("latest") + (s.days.length ? " (" + s.days[s.days.length - 1] + ")" : "") : d;
      sel.appendChild(o);
    });
  }
  sel.value = chosenDay;
}

function renderFreshness(a) {
  const el = $("freshness");
  const parts = a.partitions.length;
  const at = a.read_at ? a.read_at.replace("T", " ").slice(0, 19) : "–";
  let line = t("asOf") + " " + at + " · " + parts + " " + t("partitions");
  if (a.lag !== null && a.lag !== undefined) line += " · " + fmt(a.lag) + " " + t("lag");
  if (a.stale) line = t("stale") + (a.problem ? " (" + a.problem + ")" : "") + " · " + line;
  el.textContent = line;
  el.classList.toggle("stale", a.stale);
  el.dataset.stale = String(a.stale);
}

function renderDistricts(ds) {
  const body = $("district-table").tBodies[0];
  body.innerHTML = "";
  ds.forEach((d) => {
    const tr = document.createElement("tr");
    tr.dataset.district = d.district;
    const cells = [
      [districtName(d.district), null, "name"], [fmt(d.people_sampled), d.people_sampled, "people"],
      [fmt(d.using_code), d.using_code, "using"], [pct(d.percent_using_code), d.percent_using_code, "percent"],
      [fmt(d.valid_scans), d.valid_scans, "scans"], [fmt(d.rejected), d.rejected, "rejected"],
    ];
    cells.forEach(([text, value, cls]) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      if (value !== null) td.dataset.value = String(value);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  const sorted = ds.slice().sort((a, b) => a.people_sampled - b.people_sampled);
  chart("district-chart").setOption({
    animation: ANIMATE,
    grid: { left: 8, right: 16, top: 8, bottom: 8, containLabel: true },
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    xAxis: { type: "value" },
    yAxis: { type: "category", data: sorted.map((d) => districtName(d.district)) },
    series: [{ type: "bar", data: sorted.map((d) => d.people_sampled), itemStyle: { color: "#1565c0" } }],
  }, true);
}

let mapReady = false;
function renderMap(ds) {
  if (!mapReady) return;
  const byPercent = $("map-metric").value === "percent";
  const data = ds.map((d) => ({
    name: DISTRICTS[d.district][0],
    value: byPercent ? (d.percent_using_code === null ? 0 : Number(d.percent_using_code.toFixed(2))) : d.people_sampled,
    d,
  }));
  const values = data.map((x) => x.value);
  chart("map").setOption({
    animation: ANIMATE,
    tooltip: {
      trigger: "item",
      formatter: (p) => {
        const d = p.data && p.data.d;
        if (!d) return p.name;
        return "<b>" + districtName(d.district) + "</b><br>" + t("peopleSampled") + ": " + fmt(d.people_sampled) +
          "<br>" + t("percentUsingCode") + ": " + pct(d.percent_using_code) + "<br>" + t("validScans") + ": " + fmt(d.valid_scans);
      },
    },
    visualMap: {
      min: byPercent ? Math.min.apply(null, values.filter((v) => v > 0).concat([0])) : 0,
      max: Math.max.apply(null, values.concat([1])), calculable: true, left: 0, bottom: 0,
      inRange: { color: ["#e3f2fd", "#0d47a1"] }, text: [byPercent ? "%" : "", ""],
    },
    series: [{ type: "map", map: "shanghai", roam: true, data,
      label: { show: window.innerWidth > 600, fontSize: 9, formatter: (p) => (lang === "zh" ? p.name : DISTRICTS[(p.data && p.data.d.district) || ""]?.[1] || p.name) } }],
  }, true);
}

function renderHours(hs) {
  chart("hour-chart").setOption({
    animation: ANIMATE,
    grid: { left: 8, right: 16, top: 24, bottom: 8, containLabel: true },
    tooltip: { trigger: "axis" },
    legend: { data: [t("peopleSampled"), t("validScans")] },
    xAxis: { type: "category", data: hs.map((h) => String(h.hour).padStart(2, "0") + ":00") },
    yAxis: { type: "value" },
    series: [
      { name: t("peopleSampled"), type: "line", smooth: true, areaStyle: {}, data: hs.map((h) => h.people_sampled) },
      { name: t("validScans"), type: "line", smooth: true, data: hs.map((h) => h.valid_scans) },
    ],
  }, true);
}

function bars(id, pairs) {
  chart(id).setOption({
    animation: ANIMATE,
    grid: { left: 8, right: 16, top: 8, bottom: 8, containLabel: true },
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    xAxis: { type: "value" },
    yAxis: { type: "category", data: pairs.map((p) => p[0]) },
    series: [{ type: "bar", data: pairs.map((p) => p[1]), label: { show: true, position: "right" } }],
  }, true);
}

// Codes are issued in the days before sampling: issued on the day shows a
// channel failing on an outage day; issued to date is what people could show.
function renderChannels(cs) {
  const body = $("channel-table").tBodies[0];
  body.innerHTML = "";
  cs.forEach((c) => {
    const tr = document.createElement("tr");
    tr.dataset.channel = c.channel;
    [[t(c.channel), null, "name"], [fmt(c.count), c.count, "on-day"], [fmt(c.to_date), c.to_date, "to-date"]].forEach(([text, v, cls]) => {
      const td = document.createElement("td");
      td.textContent = text;
      td.className = cls;
      if (v !== null) td.dataset.value = String(v);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
  chart("channel-chart").setOption({
    animation: ANIMATE,
    grid: { left: 8, right: 16, top: 24, bottom: 8, containLabel: true },
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    legend: { data: [t("codesOnDay"), t("codesToDate")] },
    xAxis: { type: "value" },
    yAxis: { type: "category", data: cs.map((c) => t(c.channel)) },
    series: [
      { name: t("codesOnDay"), type: "bar", data: cs.map((c) => c.count), label: { show: true, position: "right" } },
      { name: t("codesToDate"), type: "bar", data: cs.map((c) => c.to_date), label: { show: true, position: "right" } },
    ],
  }, true);
}

function renderSites(sites) {
  const body = $("site-table").tBodies[0];
  body.innerHTML = "";
  sites.forEach((s) => {
    const tr = document.createElement("tr");
    tr.dataset.site = s.site_id;
    [[s.site_id, null], [fmt(s.people_sampled), s.people_sampled], [fmt(s.valid_scans), s.valid_scans]].forEach(([text, v]) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (v !== null) td.dataset.value = String(v);
      tr.appendChild(td);
    });
    body.appendChild(tr);
  });
}

function connect() {
  if (source) source.close();
  const q = new URLSearchParams({ access_token: token });
  if (chosenDay) q.set("day", chosenDay);
  source = new EventSource("/v1/stream?" + q.toString());
  source.addEventListener("summary", (e) => {
    $("login").hidden = true;
    $("dash").hidden = false;
    render(JSON.parse(e.data));
    Object.values(charts).forEach((c) => c.resize());
  });
  source.onerror = () => {
    // EventSource reconnects by itself; a refused token is found by asking once.
    fetch("/v1/views", { headers: { Authorization: "Bearer " + token } }).then((r) => {
      if (r.status === 401) {
        source.close();
        localStorage.removeItem("swabstream.token");
        showLogin(t("badToken"));
      } else {
        $("freshness").textContent = t("reconnecting");
      }
    }).catch(() => { $("freshness").textContent = t("reconnecting"); });
  };
}

function showLogin(error) {
  $("dash").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = error || "";
}

function start() {
  // `#token=…&day=YYYY-MM-DD`: a link that signs in, and pins a day.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("day")) chosenDay = hash.get("day");
  if (hash.get("token")) {
    token = hash.get("token");
    localStorage.setItem("swabstream.token", token);
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    token = localStorage.getItem("swabstream.token");
  }
  applyLanguage();
  fetch("/assets/vendor/shanghai.geojson").then((r) => r.json()).then((geo) => {
    echarts.registerMap("shanghai", geo);
    mapReady = true;
    if (summary) renderMap(summary.districts);
  });
  $("lang").onclick = () => {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("swabstream.lang", lang);
    applyLanguage();
  };
  $("day").onchange = (e) => { chosenDay = e.target.value; connect(); };
  $("map-metric").onchange = () => summary && renderMap(summary.districts);
  $("login-form").onsubmit = (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    localStorage.setItem("swabstream.token", token);
    connect();
  };
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
  if (token) connect(); else showLogin();
}

start();
