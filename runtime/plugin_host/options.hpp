#pragma once
/// A plugin's options as the run config gives them, key to text; the plugin's declared specs
/// check them (plugin_host.hpp). Its own header so that the config needs no plugin loader.
#include <map>
#include <string>

namespace flotilla {

using PluginOptions = std::map<std::string, std::string>;

}  // namespace flotilla
